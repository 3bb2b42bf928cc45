"""Training loops (KTO) and their checkpointing."""
