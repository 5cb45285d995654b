"""Model downloads from the Hugging Face Hub: config, tokenizer and safetensors only, with
pickle-only repositories refused before anything is fetched, and the local cache offline."""

from __future__ import annotations

from pathlib import Path

from qlora_studio.core.errors import ModelSourceError
from qlora_studio.core.events import Reporter, format_mb, say
from qlora_studio.core.models.files import (
    HUB_FILES,
    HUB_PICKLES,
    NOT_WEIGHTS,
    PICKLE_SUFFIXES,
)


def download_from_hub(
    repo_id: str, allow_pickle: bool, trust_remote_code: bool, reporter: Reporter | None
) -> Path:
    """Download config, tokenizer and weights of ``repo_id``; offline, use the hub cache."""
    import fnmatch

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    failures = (OSError, ValueError, HfHubHTTPError)
    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])
    listing, reason = None, "offline mode is on (HF_HUB_OFFLINE) and it is not in the local cache"
    try:  # a dry run lists the files: pickle-only weights are refused before any download
        listing = snapshot_download(repo_id, allow_patterns=patterns + HUB_PICKLES, dry_run=True)
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"{repo_id} is gated on the Hugging Face Hub",
            hint="accept its licence on the model page, then log in with: hf auth login",
        ) from exc
    except failures as exc:
        if not constants.HF_HUB_OFFLINE:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    if listing is not None:
        names = [info.filename for info in listing]
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) and not NOT_WEIGHTS.match(n)]
        if pickles and not any(n.endswith(".safetensors") for n in names):
            if not allow_pickle:
                raise ModelSourceError(
                    f"{repo_id} has only pickle weights (.bin), which can run code when loaded",
                    hint="pick a safetensors copy, or if you trust it pass --allow-pickle (or set "
                    "model.allow_pickle: true in the run config)",
                )
            patterns += HUB_PICKLES
        wanted = [i for i in listing if any(fnmatch.fnmatch(i.filename, p) for p in patterns)]
        to_get = format_mb(sum(i.file_size or 0 for i in wanted if i.will_download))
        say(reporter, f"Downloading {repo_id}: {to_get} to fetch", phase="downloading")
    try:
        folder = snapshot_download(
            repo_id, allow_patterns=patterns, local_files_only=listing is None
        )
    except failures as exc:
        raise ModelSourceError(
            f"{repo_id!r} is not a local folder, and the Hugging Face Hub could not provide it "
            f"({reason if listing is None else exc})",
            hint="check the id on huggingface.co; if you are offline, download it first "
            f"(hf download {repo_id}) or pick a local folder",
        ) from exc
    return Path(folder)
