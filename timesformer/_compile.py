"""What torch.compile needs to know about this package's functions, without importing ``torch._dynamo``."""

from __future__ import annotations


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo``, which creates the inductor
    cache folder as it is imported: where no temporary folder can be written (a read-only container), importing
    this package failed, though only torch.compile needs dynamo. Marking the function is all that decorator
    does (torch 2.1 to 2.13); dynamo reads the mark when it traces a call (tests/test_import.py checks both)."""
    fn._dynamo_marked_constant = True
    return fn
