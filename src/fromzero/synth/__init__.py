"""Writing one's own fine-tuning data, locally: documents are chunked, a generator (a fromzero checkpoint in-process,
or any OpenAI-compatible endpoint) writes question/answer pairs about each chunk, filters keep what holds up, and the
kept pairs are SFT JSONL in the messages format `fromzero sft --data` reads. `synth_preferences` samples k answers
per prompt and lets a judge pick the chosen and rejected one, for `fromzero reward|dpo --data`."""

from fromzero.synth.config import SynthConfig
from fromzero.synth.docs import Chunk, WordSpans, chunk_documents, read_documents
from fromzero.synth.generators import EndpointGenerator, EngineGenerator, Generated, Generator
from fromzero.synth.judges import Judge, LLMJudge, RewardModelJudge
from fromzero.synth.parse import parse_pairs
from fromzero.synth.prompts import (
    DEFAULT_TEMPLATE,
    QUESTION_TEMPLATE,
    load_template,
    render_prompt,
    render_question_prompt,
)
from fromzero.synth.run import SynthReport, read_prompts, synth_instructions, synth_preferences

__all__ = [
    "DEFAULT_TEMPLATE",
    "QUESTION_TEMPLATE",
    "render_question_prompt",
    "Chunk",
    "EndpointGenerator",
    "EngineGenerator",
    "Generated",
    "Generator",
    "Judge",
    "LLMJudge",
    "RewardModelJudge",
    "SynthConfig",
    "SynthReport",
    "chunk_documents",
    "load_template",
    "parse_pairs",
    "read_documents",
    "read_prompts",
    "render_prompt",
    "synth_instructions",
    "synth_preferences",
    "WordSpans",
]
