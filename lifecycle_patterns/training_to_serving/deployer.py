"""The auto deploy of L2: predictor processes for a model version, started and stopped here.

`Deployer.spawn` starts the template predictor in its model-load mode (`patternkit.predictor`
with MODEL_REPO_URL, MODEL_NAME, MODEL_VERSION) on a free port, with REGISTRY_URL so that, once
its model has loaded, it registers itself in the service registry, and PREDICTION_LOG_URL so
that its predictions go to the log stream. A canary may carry injected faults (FAIL_MODE,
DELAY_MS: `patternkit.faults`). `stop` ends one (SIGTERM, then SIGKILL), `retire_old` ends the
versions neither stable nor on trial once their age passes MAX_AGE_S. The children share the
controller's process group, so they never outlive the stack. Locally this is a stand-in for
what KServe or a Kubernetes Deployment does in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from patternkit.infra import free_port

log = logging.getLogger("training_to_serving.deployer")


@dataclass
class Member:
    id: str
    version: str
    role: str  # serve or infra
    url: str
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)
    faults: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None

    def view(self) -> dict[str, Any]:
        code = self.popen.poll()
        return {"id": self.id, "version": self.version, "role": self.role, "url": self.url,
                "pid": self.popen.pid, "age_s": round(time.time() - self.started, 1),
                "faults": self.faults, "state": "running" if code is None else
                f"exited ({code})", "stopped": self.stopped}


@dataclass
class DeploySettings:
    repo_url: str
    model_name: str
    registry_url: str
    log_url: str
    log_prefix: str
    log_dir: Path
    ttl_s: float
    host: str = "127.0.0.1"  # bound and advertised: the controller's own host name
    grace_s: float = 5.0


class Deployer:
    def __init__(self, cfg: DeploySettings) -> None:
        self.cfg = cfg
        self.members: list[Member] = []
        self._n = 0

    def running(self, version: str | None = None, role: str = "serve") -> list[Member]:
        return [m for m in self.members if m.role == role and m.stopped is None
                and m.popen.poll() is None and (version is None or m.version == version)]

    async def spawn(self, version: str, role: str = "serve", register: bool = True,
                    faults: dict[str, Any] | None = None) -> Member:
        self._n += 1
        port = free_port()
        url = f"http://{self.cfg.host}:{port}"
        name = f"{role}-{version.replace('.', '-')}-{self._n}"
        env = {**os.environ, "SERVICE_NAME": "predictor", "INSTANCE_NAME": name,
               "MODEL_REPO_URL": self.cfg.repo_url, "MODEL_NAME": self.cfg.model_name,
               "MODEL_VERSION": version, "EXPECTED_FEATURES": "4",
               "PREDICTION_LOG_URL": self.cfg.log_url if register else "",
               "PREDICTION_LOG_PREFIX": self.cfg.log_prefix, "PREDICTION_LOG_RETRY_S": "1",
               "REGISTRY_URL": self.cfg.registry_url if register else "",
               "REGISTRY_TTL_S": str(self.cfg.ttl_s),
               "ADVERTISE_URL": url}
        faults = {k: v for k, v in (faults or {}).items() if v}
        env.update({k.upper(): str(v) for k, v in faults.items()})
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.cfg.log_dir / f"{name}.log").open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "patternkit.serve", "patternkit.predictor:create_app",
                 "--host", self.cfg.host, "--port", str(port), "--timeout-graceful-shutdown", "2"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        member = Member(name, version, role, url, popen, faults=faults)
        self.members.append(member)
        log.info("started %s (version %s, pid %d)%s", name, version, popen.pid,
                 f" with faults {faults}" if faults else "")
        return member

    async def wait_ready(self, member: Member, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if member.popen.poll() is not None:
                    raise OSError(f"{member.id} exited with {member.popen.returncode}")
                with suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{member.url}/ready",
                                           timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{member.id} was not ready within {timeout_s:g} s")

    async def stop(self, member: Member, why: str) -> None:
        member.stopped = why
        await asyncio.to_thread(self._terminate, member.popen, self.cfg.grace_s)
        log.info("stopped %s: %s", member.id, why)

    @staticmethod
    def _terminate(popen: subprocess.Popen[bytes], grace_s: float) -> None:
        with suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                popen.kill()
            popen.wait(timeout=grace_s)

    async def stop_version(self, version: str, why: str) -> list[str]:
        gone = self.running(version)
        await asyncio.gather(*(self.stop(m, why) for m in gone))
        return [m.id for m in gone]

    async def retire_old(self, keep: set[str], max_age_s: float) -> list[Member]:
        """Stop the serving members older than `max_age_s` whose version is not in `keep`."""
        now = time.time()
        old = [m for m in self.running() if m.version not in keep
               and now - m.started > max_age_s]
        await asyncio.gather(*(self.stop(m, f"retired: {now - m.started:.0f} s old > "
                                            f"MAX_AGE_S {max_age_s:g}") for m in old))
        return old

    async def aclose(self) -> None:
        await asyncio.gather(*(self.stop(m, "controller stopping") for m in self.members
                               if m.popen.poll() is None))
