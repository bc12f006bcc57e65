"""Finding and loading models with errors a user can act on: one line naming the argument.

``resolve_model`` decides at once whether a name is a local folder or a Hugging Face Hub id that is
cached or can be downloaded (a mistyped folder name used to go to the Hub: five retries, about
50 s with no network; ``./nodir`` failed on the Hub's repo-id rules). ``check_inform_checkpoint``
refuses a plain backbone folder where an InfoRM reward model belongs (it used to fail deep inside
transformers), and ``load_weights`` reports a damaged weights file as such.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Optional
from urllib.parse import urlparse

_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_HELP = "see 'A backbone offline' in the README"


def resolve_model(text: str, option: str = "--model", local_only: bool = False) -> str:
    """The folder (or Hub id) to load ``--model`` from; ValueError naming ``option`` otherwise.

    * an existing folder is used as is; an existing file is refused;
    * a name that looks like a path (starts with ``/``, ``./``, ``../``, ``~``, or its folder
      part exists here) and does not exist fails at once, as does any missing name when
      ``local_only``;
    * anything else is a Hub id: its cached snapshot when the Hub cannot be reached (or
      ``HF_HUB_OFFLINE`` is set), the id itself when the Hub can be reached (transformers
      downloads it), and an error naming both facts when neither.
    """
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{option}: {text} is a file; give the model's folder")
    folder = os.path.dirname(path.rstrip("/\\"))
    if local_only or text.startswith(_LOCAL_PREFIXES) or text in (".", "..") or (folder and os.path.isdir(folder)):
        raise ValueError(f"{option}: folder not found: {text}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ValueError(f"{option}: {text!r} is neither a local folder nor a Hugging Face Hub model id") from None
    cached = _cached_snapshot(text)
    if _offline():
        if cached:
            return cached
        raise ValueError(f"{option}: {text!r} is not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is "
                         f"set; give a local folder ({OFFLINE_HELP})")
    problem = hub_unreachable()
    if problem is None:
        return text
    if cached:
        return cached
    raise ValueError(f"{option}: {text!r} is not a local folder nor in the Hugging Face cache, and the Hub cannot be "
                     f"reached to download it (no network? {problem}); give a local folder ({OFFLINE_HELP})")


def _cached_snapshot(repo_id: str) -> Optional[str]:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache: not usable offline
        return None


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hugging Face Hub cannot be reached (one TCP connection, ``timeout`` seconds), or
    None when it can, or when a proxy is configured (the proxy decides; transformers then tries)."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{endpoint.hostname}:{port}: {error.strerror or error}"


def read_config(folder: str, option: str = "--model") -> dict:
    """The folder's config.json as a dict; ValueError naming ``option`` when it is missing or broken."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{option}: {folder} has no config.json; give a folder written by save_pretrained "
                         "(inform-fast train writes one)")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{option}: cannot read {path} ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{option}: {path} is not a model config (a JSON object)")
    return config


def check_inform_checkpoint(folder: str, option: str = "--model") -> None:
    """``folder`` holds an InfoRM reward model, not a plain backbone."""
    model_type = read_config(folder, option).get("model_type")
    if model_type != "inform":
        raise ValueError(f"{option}: {folder} holds a {model_type or 'model'!s} model, not an InfoRM reward model "
                         f"(model_type 'inform'); train one first: inform-fast train --model {folder} --data ... --output-dir rm")


def load_weights(load, folder: str, option: str = "--model"):
    """``load()`` (a from_pretrained call) with a damaged or incomplete checkpoint reported as one
    line naming ``option``."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ValueError(f"{option}: cannot load the model in {folder}: {_first_line(error)}") from None
    except Exception as error:  # safetensors' SafetensorError and the like: a damaged file
        if type(error).__module__.startswith("safetensors"):
            raise ValueError(f"{option}: cannot load the model in {folder}: a weights file is damaged or incomplete "
                             f"({_first_line(error)}); save or download it again") from None
        raise


def load_tokenizer(folder: str, option: str = "--model"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{option}: cannot load a tokenizer from {folder}: {_first_line(error)}") from None


def load_inform_model(folder: str, option: str = "--model", dtype=None):
    """(InfoRMForRewardModel, tokenizer) from a local InfoRM checkpoint folder, checked."""
    from inform_fast.modeling import InfoRMForRewardModel

    check_inform_checkpoint(folder, option)
    model = load_weights(lambda: InfoRMForRewardModel.from_pretrained(folder, dtype=dtype), folder, option)
    return model, load_tokenizer(folder, option)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
