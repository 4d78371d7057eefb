"""What every answer model shares: named fields the contract promises, room for more."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    """An answer whose named fields are promised; fields added later do not break a client (and
    a field the code adds before the model names it is passed on, not dropped)."""

    model_config = ConfigDict(extra="allow")


class Money(Answer):
    fen: int = Field(description="integer fen (分)")
    yuan: str = Field(description="the same amount in yuan, for people", examples=["12.30"])
