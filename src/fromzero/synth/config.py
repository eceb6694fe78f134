"""What `fromzero synth` and the pipeline's synth stage read: where the documents are, how they are chunked, how the
generator samples, and what the filters keep."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docs: list[str] = Field(
        default_factory=list,
        description="documents to write data from (txt/md/jsonl/parquet, "
        "dirs, globs: what data.sources takes); empty in `fromzero run`: the built-in world's new "
        "people",
    )
    endpoint: str | None = Field(
        None,
        description="fromzero run: write the data with this OpenAI-compatible server "
        "(a larger local model, say) instead of the SFT model in process",
    )
    model: str | None = Field(None, description="the endpoint's model name")
    api_key: str | None = Field(None, description="the endpoint's API key (or $FROMZERO_SYNTH_API_KEY)")
    text_field: str = Field("text", description="field holding the text in jsonl/json/parquet records")
    chunk_tokens: PositiveInt = Field(160, description="tokens per chunk (the generator's tokenizer)")
    chunk_overlap: int = Field(32, ge=0, description="tokens each chunk shares with the one before")
    unit: Literal["chunk", "sentence"] = Field(
        "chunk",
        description="chunk: the generator writes question/answer "
        "pairs about each chunk; sentence: it writes a question that each "
        "sentence of a chunk answers, and the sentence is the answer "
        "(instruction backtranslation: a small generator only has to ask)",
    )
    questions_per_sentence: PositiveInt = Field(1, description="unit=sentence: questions asked for per sentence")
    pairs_per_chunk: PositiveInt = Field(8, description="question/answer pairs asked for per chunk")
    pairs_per_request: PositiveInt = Field(
        1,
        description="pairs asked for in one request ({n} of the template); "
        "pairs_per_chunk / pairs_per_request requests per chunk, each seeded",
    )
    template: str | None = Field(
        None,
        description="prompt template file with {chunk} and {n} (unit=sentence: {chunk} "
        "and {sentence}); default: synth/templates/instruct.txt (question.txt)",
    )
    temperature: float = Field(1.0, ge=0, description="generator sampling temperature (0: greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="generator nucleus sampling")
    max_new_tokens: PositiveInt = Field(96, description="tokens per generated answer")
    concurrency: PositiveInt = Field(4, description="requests in flight at once against an endpoint")
    retries: int = Field(3, ge=0, description="retries of a failed endpoint request, with exponential backoff")
    backoff_s: float = Field(0.5, ge=0, description="first retry's wait; doubled each retry")
    timeout_s: PositiveFloat = Field(120.0, description="one endpoint request's time limit")
    min_question_chars: PositiveInt = Field(8, description="shorter questions are dropped (too_short)")
    min_answer_chars: PositiveInt = Field(2, description="shorter answers are dropped (too_short)")
    max_question_chars: PositiveInt = Field(300, description="longer questions are dropped (too_long)")
    max_answer_chars: PositiveInt = Field(600, description="longer answers are dropped (too_long)")
    near_duplicate: float = Field(
        0.8,
        gt=0,
        le=1,
        description="drop a pair whose question's estimated Jaccard "
        "similarity (MinHash of word 3-grams) to a kept one reaches this (1: off, exact duplicates only)",
    )
    grounding: float = Field(
        0.5, ge=0, le=1, description="least fraction of the answer's content words found in the chunk (0: no check)"
    )
    judge: Literal["none", "llm", "reward"] = Field(
        "none",
        description="score every pair: the generator asked for a "
        "1-10 rating (LLM-as-judge), or a reward model (judge_ckpt)",
    )
    judge_ckpt: str | None = Field(None, description="reward model checkpoint for judge=reward")
    judge_template: str | None = Field(None, description="judge prompt file with {chunk}, {question}, {answer}")
    judge_threshold: float = Field(
        6.0, description="least judge score kept (1-10 for an LLM judge; a reward model's score for judge=reward)"
    )
    decontaminate: list[str] = Field(
        default_factory=list,
        description="evaluation files (any instruction or task "
        "format, or plain text) whose n-grams a kept question must not share",
    )
    decontaminate_ngram: PositiveInt = Field(8, description="word n-gram length of the contamination check")
    seed: int = Field(0, description="seed of every request (with the chunk and request index)")
    # the pipeline's question writer: the backward model of instruction backtranslation
    writer_steps: int = Field(
        0,
        ge=0,
        description="fromzero run: fine-tune a copy of the SFT model this many steps on "
        "the practice conversations (world.n_practice_people) and write with it; 0: the SFT "
        "model writes as it is",
    )
    writer_lr: PositiveFloat = Field(5e-4, description="fromzero run: learning rate of the question writer's SFT")
    # the pipeline's continued SFT on the kept pairs
    steps: PositiveInt = Field(60, description="fromzero run: SFT steps on the kept pairs and the replay")
    lr: PositiveFloat = Field(5e-4, description="fromzero run: learning rate of that SFT")
    replay: float = Field(1.0, ge=0, description="fromzero run: stage-2 conversations mixed in per kept pair")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_tokens ({self.chunk_tokens})"
            )
        if self.judge == "reward" and not self.judge_ckpt:
            raise ValueError("judge=reward needs judge_ckpt (a reward model checkpoint)")
        return self
