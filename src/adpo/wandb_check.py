"""wandb online, checked before any work: credentials present and the server reachable, or a clear error at once.

Without it, a run configured `wandb=online` on a machine without network (a compute node, say) fails only when a
stage first calls wandb.init (minutes in, after the stages before it ran) with a login timeout. `preflight(cfg)` runs
first instead (adpo.stage_guard for a stage started on its own; the pipeline's run() once for all its stages):

- the mode is the config's `wandb.mode` when `wandb.enabled` (adpo.tracking passes it to wandb.init, where it wins
  over a WANDB_MODE environment variable); only "online" is checked;
- credentials: WANDB_API_KEY (or WANDB_IDENTITY_TOKEN_FILE), else a ~/.netrc entry for the base URL's host (what
  `wandb login` writes; read with wandb's own reader), else wandb's settings file;
- reachability: one HTTPS request to the base URL (WANDB_BASE_URL, else wandb's setting, else its default) with a
  5 s timeout; any HTTP answer, even an error status, means the server is there.

Failing either raises WandbUnavailable naming what is missing and the fixes; with `wandb.fallback_offline: true`
the run switches to offline instead (cfg.wandb.mode, and the pipeline passes wandb.mode=offline to its stages),
with a warning saying so. Nothing is checked for rank != 0 of a distributed run: only rank 0 logs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
FIXES = ("run offline with wandb=offline (and `wandb sync <paths.root>/wandb` later), or set "
         "wandb.fallback_offline=true to switch to offline by itself when wandb.ai cannot be used")


class WandbUnavailable(RuntimeError):
    """wandb is configured online but cannot be used from here."""


def wants_online(cfg: DictConfig) -> bool:
    wb = cfg.get("wandb")
    return bool(wb is not None and wb.get("enabled", False) and wb.get("mode") == "online")


def _is_logging_rank() -> bool:
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def base_url() -> str:
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"].rstrip("/")
    try:
        from wandb.sdk import wandb_setup

        return str(wandb_setup.singleton().settings.base_url).rstrip("/")
    except Exception:  # another wandb version's internals: its long-standing default
        return "https://api.wandb.ai"


def find_credentials(url: str) -> str | None:
    """Where the API key for `url` comes from ("WANDB_API_KEY", "~/.netrc", ...), or None when there is none."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(var):
            return var
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        if read_netrc_auth(host=url):
            return "netrc"
    except ImportError:  # an older wandb: read ~/.netrc ourselves
        import netrc

        try:
            if netrc.netrc(os.environ.get("NETRC")).authenticators(urlsplit(url).netloc):
                return "netrc"
        except (OSError, netrc.NetrcParseError):
            pass
    except Exception as e:  # a malformed key in ~/.netrc: wandb would refuse it too
        log.warning("wandb preflight: ~/.netrc entry for %s not usable (%s)", url, e)
    try:
        from wandb.sdk import wandb_setup

        if wandb_setup.singleton().settings.api_key:
            return "wandb settings"
    except Exception:
        pass
    return None


def unreachable(url: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """Why `url` cannot be reached (refused, name not resolved, timed out), or None when a server answers.

    The request runs in a thread waited on for `timeout`: urllib's timeout covers the connection, not the host name
    lookup, which on a node with a broken resolver can hang far longer."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # an answer (401, 404, ...): the server is there
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, socket.gaierror):
                outcome.append(f"its host name does not resolve ({reason.strerror})")
            elif isinstance(reason, TimeoutError):
                outcome.append(f"no answer within {timeout:.0f} s")
            else:
                outcome.append(str(getattr(reason, "strerror", None) or reason))
        except TimeoutError:
            outcome.append(f"no answer within {timeout:.0f} s")
        except (OSError, ValueError) as e:
            outcome.append(str(e))

    thread = threading.Thread(target=attempt, daemon=True, name="wandb-preflight")
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def problem(cfg: DictConfig) -> tuple[str, str] | None:
    """(what stops this run from using wandb online, its fix), or None (also when the run is not online)."""
    if not wants_online(cfg) or not _is_logging_rank():
        return None
    url = base_url()
    if find_credentials(url) is None:
        env_mode = os.environ.get("WANDB_MODE")
        note = (f" (WANDB_MODE={env_mode} in the environment does not change it: the config's wandb.mode is what "
                f"wandb.init gets)") if env_mode and env_mode != "online" else ""
        return (f"wandb.mode=online but no wandb API key for {url}: WANDB_API_KEY is not set and ~/.netrc has no "
                f"entry for {urlsplit(url).hostname}{note}",
                f"`wandb login` (or export WANDB_API_KEY=...), or {FIXES}")
    why = unreachable(url)
    if why is not None:
        return (f"wandb.mode=online but the wandb server {url} cannot be reached: {why}",
                f"check the network (a compute node without internet?) or WANDB_BASE_URL, or {FIXES}")
    return None


def preflight(cfg: DictConfig) -> bool:
    """Check wandb online before any work. Raises WandbUnavailable, or with wandb.fallback_offline switches
    cfg.wandb.mode to offline (and returns True: the caller passes that on to processes it starts)."""
    found = problem(cfg)
    if found is None:
        return False
    if not OmegaConf.select(cfg, "wandb.fallback_offline", default=False):
        raise WandbUnavailable(f"{found[0]}. Fix: {found[1]}.")
    with open_dict(cfg):
        cfg.wandb.mode = "offline"
    bar = "!" * 100
    log.warning("\n%s\nwandb: SWITCHED TO OFFLINE (wandb.fallback_offline=true): %s.\nRun files are written to %s; "
                "upload them later with `wandb sync`.\n%s", bar, found[0], cfg.wandb.get("dir"), bar)
    return True
