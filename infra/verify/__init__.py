"""``fraudctl verify``: the platform rendered and checked as one system (see :mod:`infra.verify.checks`)."""
