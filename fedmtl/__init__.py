"""fedmtl: federated multi-task recommendation on Flower."""
