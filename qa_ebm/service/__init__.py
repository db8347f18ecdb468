"""`qa-ebm serve`: one loaded pipeline behind an HTTP JSON API and a small HTML page.

``requests.py`` checks a request body, ``worker.py`` runs model calls one at a time under a deadline,
``server.py`` routes and answers, ``page.py`` is the page. The answers come from
``qa_ebm.pipeline.answering``, the code path of `qa-ebm answer`, so both print the same records.
"""

from qa_ebm.service.requests import RequestError, RequestLimits, parse_answer_request
from qa_ebm.service.server import AnswerServer, ServeSettings, describe
from qa_ebm.service.worker import DeadlineExceeded, ModelWorker

__all__ = [
    "AnswerServer",
    "DeadlineExceeded",
    "ModelWorker",
    "RequestError",
    "RequestLimits",
    "ServeSettings",
    "describe",
    "parse_answer_request",
]
