"""All Flower code: the ClientApp, the ServerApp and the strategy factory."""
