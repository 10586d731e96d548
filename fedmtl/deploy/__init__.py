"""Deployment tools: a local SuperLink + SuperNodes harness, test certificates, per-node data export."""
