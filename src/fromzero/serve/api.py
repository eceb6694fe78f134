"""Request bodies of the OpenAI-compatible API and the arena, and the OpenAI error shape.

Bodies ignore fields they do not know, as OpenAI's own server does; fields they know are checked, and a
wrong one is a 400 that names it in `param`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error the client caused (or a missing model), answered as {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(Body):
    type: str = "text"
    text: str = ""


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """What every generating request shares."""

    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, description="a vLLM extension")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        return [s for s in stops if s]


class ChatCompletionRequest(Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(Sampling):
    model: str
    prompt: str | list[str]
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=20)


class ArenaRequest(Body):
    messages: list[ChatMessage] = Field(min_length=1)
    models: list[str] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="two served models; default: two drawn at random (or two samples of the one model served)",
    )
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="default: 128, or the server's limit if lower")
    stream: bool = False
    session_id: str | None = Field(None, max_length=200)


class VoteRequest(Body):
    id: str = Field(min_length=1, max_length=200, description="the battle, as POST /api/arena returned it")
    choice: Literal["a", "b", "tie", "both_bad"]
    better: str | None = Field(None, description="an answer the voter wrote instead (optional)")
    idempotency_key: str | None = Field(None, max_length=200)
    session_id: str | None = Field(None, max_length=200)
