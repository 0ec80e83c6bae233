"""The server's bookkeeping of a run: results folder, checkpoint, byte meter, tracking.

Runs on the server only. Nothing here decides anything about training: strategies
(:mod:`fedsem_app.strategies`) call in to record what happened.
"""
