"""The inference core: admit (limits, budgets) -> router -> backend -> settle (limits released,
usage record queued), with plain values in and out and no HTTP (`Gateway.call`). Dialects
(proxy/dialects/) translate wire formats to and from it; the edge (proxy/edge/) serves them."""

from .cancel import Disconnected, Watch, unless_disconnected
from .deadlines import Deadlines
from .gateway import Gateway, check_caller
from .values import STREAMABLE, Answer, Inference, Operation, Stream

__all__ = ["STREAMABLE", "Answer", "Deadlines", "Disconnected", "Gateway", "Inference", "Operation", "Stream", "Watch",
           "check_caller", "unless_disconnected"]
