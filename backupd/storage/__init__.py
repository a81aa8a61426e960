"""Destinations, one module each, behind the StorageAdapter port (base.py)."""
