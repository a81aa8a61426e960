"""Database engines, one module each, behind the SourceAdapter port (base.py)."""
