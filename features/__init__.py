"""Pure, vectorised feature functions: tables in, feature frames out, no I/O."""

from features._checks import FairmarginError, FairmarginInputError

__all__ = ["FairmarginError", "FairmarginInputError"]
