"""Where adapters come from: a local folder or file, or a Hugging Face Hub repository by id.

    resolve("models/adapters")                                   # a folder from `agd train`
    resolve("org/agd-sdxl", subfolder="cfg", revision="v1.0")    # a Hub repo: its cache, offline mode

Hub ids resolve through huggingface_hub as diffusers' loaders do: the local cache first when
HF_HUB_OFFLINE=1 (or when the Hub cannot be reached), a `revision` (branch, tag or commit) pinned,
only the adapter files downloaded. A Hub id with no network and no cached copy is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.run.errors import AGDError

WEIGHTS, META = "adapters.safetensors", "adapters.json"


def looks_like_repo_id(ref: str) -> bool:
    """"org/name" (one slash, no leading dot or slash): what the Hub accepts as a model id."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def resolve(ref: str | Path, subfolder: str | None = None, weight_name: str | None = None,
            revision: str | None = None) -> Path:
    """The local adapter folder for `ref`: a folder or adapters file on disk as it is (a file: its
    folder), else a Hub repository id downloaded (or found in the cache) with its subfolder."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path / subfolder if subfolder else path
    ref = str(ref)
    if not looks_like_repo_id(ref):
        raise AGDError(f"adapters {ref}", "no such folder or file, and not a Hub repository id (org/name)",
                       "point at a folder from `agd train` / `agd export`, or at a Hub id such as org/agd-sdxl")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    names = [weight_name or WEIGHTS, META]
    try:
        folder = snapshot_download(ref, revision=revision, allow_patterns=[prefix + n for n in names],
                                   local_files_only=_offline())
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        where = f"Hub repository {ref}" + (f" (revision {revision})" if revision else "")
        raise AGDError(where, "not in the local Hugging Face cache, and the Hub "
                       + ("is off (HF_HUB_OFFLINE=1)" if _offline() else "cannot be reached")
                       + f" ({type(err).__name__})", "download it where the Hub is reachable "
                       f"(`huggingface-cli download {ref}`), or pass a local folder") from None
    except Exception as err:  # a wrong id, a private repo, a revision that does not exist
        raise AGDError(f"Hub repository {ref}", f"could not be resolved ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:160]})", "check the id, the revision and your access") from None
    out = Path(folder) / prefix if prefix else Path(folder)
    if not (out / (weight_name or WEIGHTS)).is_file():
        raise AGDError(f"Hub repository {ref}", f"has no {prefix}{weight_name or WEIGHTS}"
                       + (f" at revision {revision}" if revision else ""),
                       "pass the subfolder= and weight_name= the repository uses")
    return out
