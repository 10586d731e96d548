"""Ways to drive the ServerApp and ClientApp: in one process (fast) or on Ray (Flower's engine)."""
