"""The model against each real runtime, layout by layout.

For every layout of the corpus and every runtime: put the layout in the
runtime's net.d, let the runtime load it, ask CRI Status (NetworkReady) and, for
containerd, its CNI config dump (`crictl info`), create a real pod sandbox and
see which networks its CNI ADDs were for. The model predicts the same three
things from the same directory (read with the agent's own reader) and the bin
dir's VERSION answers, judged by that runtime's kind and version. A layout
agrees when all three match.

One runtime process serves every layout with default settings: each reload is
stateless (go-cni resets its networks on every load; ocicni replaces its map on
every sync), so the answer depends only on the directory. A barrier file that
sorts first (`!barrier.conflist`) is present while a layout is written and then
removed; the runtime has loaded the layout once it no longer reports the
barrier (containerd: not in the dump nor in the load status) or once it logged
the event of a sentinel written after the removal (CRI-O handles events in
order). Layouts with their own settings get a fresh runtime each.
`--restart-each` runs every layout on a fresh runtime instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cni_operator.node.binaries import VersionProber
from cni_operator.node.scan import read_config_dir, referenced_binaries
from cni_operator.runtime_order import RuntimeRules, predict

from devtools.runtimes import recorder
from devtools.runtimes.corpus import Layout, clear, load_corpus, materialize
from devtools.runtimes.daemon import (
    PRIVATE_PATHS,
    REPO,
    RUNTIMES,
    PodResult,
    Runtime,
    RuntimeFailure,
    RuntimeSpec,
    Settings,
    wait_for,
)

BARRIER = "!barrier.conflist"  # '!' sorts before every name the corpus uses
SETTLE_DEADLINE = 30.0
CRIO_HOLD_SECONDS = 3
CRIO_UNINITIALIZED = "Network plugin returns error: plugin status uninitialized"
PLUGINS: dict[str, list[str] | None] = {
    "loopback": None,
    "rec": None,
    "rec-old": ["0.3.1", "0.4.0"],
    "rec-ipam": None,
}


@dataclass
class Observation:
    """What the runtime said and did."""

    network_ready: bool
    message: str
    loaded: tuple[str, ...] | None  # containerd's dump (no loopback); None for CRI-O
    pod_ok: bool
    pod_networks: tuple[str, ...]
    pod_error: str


@dataclass
class Prediction:
    network_ready: bool
    networks: tuple[str, ...]
    healthy: bool
    message: str


@dataclass
class Row:
    layout: str
    runtime: str
    version: str
    observation: Observation
    prediction: Prediction
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        return not self.differences


def compare(obs: Observation, pred: Prediction) -> list[str]:
    diffs = []
    if obs.network_ready != pred.network_ready:
        diffs.append(f"NetworkReady: runtime {obs.network_ready}, model {pred.network_ready}")
    if obs.loaded is not None and obs.loaded != pred.networks:
        diffs.append(f"loaded: runtime {list(obs.loaded)}, model {list(pred.networks)}")
    if obs.pod_ok != pred.healthy:
        diffs.append(
            f"pod sandbox: runtime {'ok' if obs.pod_ok else 'failed'}, model "
            f"{'ok' if pred.healthy else 'fails'}"
        )
    elif obs.pod_ok and obs.pod_networks != pred.networks:
        diffs.append(f"pod networks: runtime {list(obs.pod_networks)}, model {list(pred.networks)}")
    return diffs


def parse_version(text: str) -> tuple[int, ...]:
    """`v2.4.2`, `1.6.20~ds1`, `1.34.0` -> (2, 4, 2) ..."""
    found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not found:
        raise ValueError(f"cannot read a version from {text!r}")
    return tuple(int(part) for part in found.groups() if part is not None)


Predictor = Callable[[RuntimeSpec, tuple[int, ...], Settings, Path, Path], Prediction]


def current_model(
    spec: RuntimeSpec, version: tuple[int, ...], settings: Settings, net_d: Path, bin_dir: Path
) -> Prediction:
    """The model of this tree, read through the agent's reader and prober."""
    files = read_config_dir(net_d)
    versions = VersionProber().bin_dir_versions(bin_dir, referenced_binaries(files))
    rules = RuntimeRules(
        spec.kind,
        version,
        max_conf_num=settings.max_conf_num if spec.kind == "containerd" else 1,
        default_network=settings.cni_default_network if spec.kind == "crio" else "",
    )
    view = predict(files, rules, versions)
    return Prediction(bool(view.network_ready), view.networks, view.healthy, view.message)


def model_from_git(ref: str) -> Predictor:
    """The model as it is at `ref` (e.g. main before the fixes), with that
    revision's reader: for the 'before' column of docs/runtime-model.md."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:operator/cni_operator/runtime_order.py"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="cniwarden-model-")) / "old_runtime_order.py"
    path.write_text(source)
    spec_ = importlib.util.spec_from_file_location("old_runtime_order", path)
    assert spec_ is not None and spec_.loader is not None
    old: ModuleType = importlib.util.module_from_spec(spec_)
    sys.modules[spec_.name] = old  # dataclasses look their module up while defining
    spec_.loader.exec_module(old)
    shutil.rmtree(path.parent)  # the module is in memory now

    def read_old(conf_dir: Path) -> dict[str, bytes | None]:
        files: dict[str, bytes | None] = {}
        for name in os.listdir(conf_dir):
            if not old.is_config_name(name) or (conf_dir / name).is_dir():
                continue
            try:
                files[name] = (conf_dir / name).read_bytes()
            except OSError:
                files[name] = None
        return files

    def predict_old(
        spec: RuntimeSpec, version: tuple[int, ...], settings: Settings, net_d: Path, bin_dir: Path
    ) -> Prediction:
        files = read_old(net_d)
        wanted: set[str] = set()
        for name, data in files.items():
            wanted.update(old.parse_config(name, data).types)
        versions = VersionProber().bin_dir_versions(bin_dir, wanted)
        analysis = old.analyze(files.items(), (), versions)
        view = analysis.containerd if spec.kind == "containerd" else analysis.crio
        ready = view.network is not None if spec.kind == "containerd" else view.file is not None
        networks = (view.network,) if view.network is not None else ()
        return Prediction(ready, networks, view.healthy, view.message)

    return predict_old


def install_bin_dir(bin_dir: Path) -> None:
    recorder.install(bin_dir, PLUGINS)
    noexec = bin_dir / "rec-noexec"
    noexec.write_text((bin_dir / "rec").read_text())
    noexec.chmod(0o644)


@contextmanager
def session(spec: RuntimeSpec, base: Path, settings: Settings, tag: str) -> Iterator[Runtime]:
    work = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=base))
    install_bin_dir(work / "cni-bin")
    (work / "net.d").mkdir()
    with Runtime(spec, work, settings) as runtime:
        yield runtime


def _barrier(serial: int) -> str:
    body = {"cniVersion": "1.0.0", "name": f"barrier-{serial}", "plugins": [{"type": "rec"}]}
    return json.dumps(body)


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.writing")
    temp.write_text(text)
    temp.rename(path)


class Observer:
    """Runs layouts on one runtime process, in order."""

    def __init__(self, runtime: Runtime, predictor: Predictor, *, shared: bool) -> None:
        self.runtime = runtime
        self.shared = shared
        self.predictor = predictor
        self.serial = 0
        name, raw = runtime.version()
        self.version_text = f"{name} {raw}"
        self.version = parse_version(raw)

    def load(self, layout: Layout) -> None:
        """Replace net.d with `layout` behind the barrier, and wait until loaded."""
        rt = self.runtime
        self.serial += 1
        _write_atomic(rt.net_d / BARRIER, _barrier(self.serial))
        clear(rt.net_d, keep=BARRIER)
        self.made = materialize(layout, rt.net_d)
        (rt.net_d / BARRIER).unlink()
        if rt.spec.kind == "containerd":
            wait_for(
                f"containerd to reload {layout.name}", self._containerd_settled, SETTLE_DEADLINE
            )
        else:
            sentinel = rt.net_d / f"sync-{self.serial}"
            sentinel.write_text("")
            wait_for(
                f"CRI-O to handle the events of {layout.name}",
                lambda: sentinel.name in rt.log.read_text(errors="replace"),
                SETTLE_DEADLINE,
            )
            sentinel.unlink()

    def _containerd_settled(self) -> bool:
        info = self.runtime.info()
        names = [n["Config"]["Name"] for n in (info.get("cniconfig") or {}).get("Networks") or []]
        return not any(n.startswith("barrier-") for n in names) and "!barrier" not in str(
            info.get("lastCNILoadStatus", "")
        )

    def _crio_pod_held(self, rt: Runtime) -> PodResult:
        """CRI-O holds RunPodSandbox until its network is ready (waitForCNIPlugin):
        ask with a short deadline and require its log to say it is waiting."""
        pod = rt.run_pod(f"d{self.serial}", timeout=CRIO_HOLD_SECONDS)
        if pod.sandbox is None:
            waiting = "CNI plugin not ready. Waiting to create" in rt.log.read_text(
                errors="replace"
            )
            if not waiting:
                raise RuntimeFailure(f"CRI-O refused the sandbox without waiting: {pod.error}")
            pod.error = f"held by CRI-O until its network is ready ({pod.error[-200:]})"
        return pod

    def observe(self, layout: Layout) -> Row:
        rt = self.runtime
        prediction = self.predictor(rt.spec, self.version, rt.settings, rt.net_d, rt.cni_bin)
        if rt.spec.kind == "crio":
            # CRI-O polls the network's status every 500 ms until it is ready once.
            wait_for(
                "CRI-O's first network status",
                lambda: rt.network_condition()[2] != CRIO_UNINITIALIZED,
                SETTLE_DEADLINE,
            )
        ready, _reason, message = rt.network_condition(rt.info(verbose=False))
        loaded = None
        if rt.spec.kind == "containerd":
            try:
                info = rt.info()
                networks = (info.get("cniconfig") or {}).get("Networks") or []
                loaded = tuple(
                    n["Config"]["Name"] for n in networks if n["Config"]["Name"] != "cni-loopback"
                )
                if not ready:
                    message += f" ({info.get('lastCNILoadStatus', '')})"
            except RuntimeFailure as error:  # e.g. a dump over gRPC's 16 MiB: unknown
                message += f" [verbose Status failed: {str(error)[-200:]}]"
        if rt.spec.kind == "crio" and not ready:
            pod = self._crio_pod_held(rt)
        else:
            pod = rt.run_pod(f"d{self.serial}")
        if self.shared:
            rt.remove_pods()  # a fresh runtime's pods go with it (Runtime.stop)
        observation = Observation(
            ready, message, loaded, pod.sandbox is not None, pod.networks, pod.error[-400:]
        )
        row = Row(layout.name, rt.spec.name, self.version_text, observation, prediction)
        row.differences = compare(observation, prediction)
        return row


def split(
    spec: RuntimeSpec, layouts: Sequence[Layout], restart_each: bool
) -> tuple[list[Layout], list[Layout]]:
    """(layouts one shared process serves, layouts that need a fresh process).
    CRI-O latches NetworkReady=true once its network was ready (cnimgr stops
    polling), so each layout needs a CRI-O of its own to be judged faithfully."""
    shared = (
        []
        if restart_each or spec.kind == "crio"
        else [x for x in layouts if x.settings == Settings() and not x.fresh_runtime]
    )
    return shared, [x for x in layouts if x not in shared]


def run_shared(
    spec: RuntimeSpec,
    layouts: Sequence[Layout],
    predictor: Predictor,
    base: Path,
    progress: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """`layouts` one after another on one runtime process, behind the barrier."""
    rows: list[Row] = []
    with session(spec, base, Settings(), spec.name) as runtime:
        observer = Observer(runtime, predictor, shared=True)
        for layout in layouts:
            started = time.monotonic()
            observer.load(layout)
            try:
                rows.append(observer.observe(layout))
            finally:
                observer.made.close()
            rows[-1].seconds = time.monotonic() - started
            progress(rows[-1])
    return rows


_storage = threading.local()


def run_fresh(
    spec: RuntimeSpec,
    layout: Layout,
    predictor: Predictor,
    base: Path,
    progress: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """`layout` on a runtime process of its own. CRI-O image stores are reused by
    the sessions of one thread (they run one after another)."""
    work = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=base))
    install_bin_dir(work / "cni-bin")
    (work / "net.d").mkdir()
    made = materialize(layout, work / "net.d")
    started = time.monotonic()
    storage = None
    if spec.kind == "crio":
        if not hasattr(_storage, "path"):
            _storage.path = Path(tempfile.mkdtemp(prefix="crio-storage-", dir=base))
        storage = _storage.path
    try:
        with Runtime(spec, work, layout.settings, crio_storage=storage) as runtime:
            row = Observer(runtime, predictor, shared=False).observe(layout)
    finally:
        made.close()
    row.seconds = time.monotonic() - started
    progress(row)
    return [row]


def run_runtime(
    name: str,
    layouts: Sequence[Layout],
    predictor: Predictor,
    base: Path,
    *,
    restart_each: bool = False,
    progress: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    return run_all(
        [name], layouts, predictor, base, parallel=1, restart_each=restart_each, progress=progress
    )[name]


@contextmanager
def private_paths() -> Iterator[None]:
    """The fixed paths each runtime's mount namespace binds over (PRIVATE_PATHS)
    exist for the whole run, and go again if the run created them: one owner, so
    runtimes started in parallel never remove them under each other."""
    created = [p for p in PRIVATE_PATHS if not p.exists()]
    for path in created:
        path.mkdir(parents=True)
    try:
        yield
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()


def run_all(
    names: Sequence[str],
    layouts: Sequence[Layout],
    predictor: Predictor,
    base: Path,
    *,
    parallel: int = 3,
    restart_each: bool = False,
    progress: Callable[[Row], None] = lambda row: None,
) -> dict[str, list[Row]]:
    """Every runtime over the layouts: each shared process and each fresh-process
    layout is one task, `parallel` tasks at a time (the runtimes mostly wait)."""
    order = {x.name: i for i, x in enumerate(layouts)}
    with private_paths(), ThreadPoolExecutor(parallel) as pool:
        tasks: list[tuple[str, Future[list[Row]]]] = []
        for name in names:
            spec = RUNTIMES[name]
            shared, alone = split(spec, layouts, restart_each)
            if shared:
                tasks.append(
                    (name, pool.submit(run_shared, spec, shared, predictor, base, progress))
                )
            for layout in alone:
                tasks.append(
                    (name, pool.submit(run_fresh, spec, layout, predictor, base, progress))
                )
        results: dict[str, list[Row]] = {name: [] for name in names}
        for name, task in tasks:
            results[name] += task.result()
    return {n: sorted(rows, key=lambda r: order[r.layout]) for n, rows in results.items()}


def summary(rows: Sequence[Row]) -> str:
    lines = []
    by_runtime: dict[str, list[Row]] = {}
    for row in rows:
        by_runtime.setdefault(row.runtime, []).append(row)
    for runtime, items in by_runtime.items():
        agree = sum(r.agrees for r in items)
        lines.append(f"{runtime} ({items[0].version}): {agree}/{len(items)} layouts agree")
        for row in items:
            if not row.agrees:
                lines.append(f"  {row.layout}: " + "; ".join(row.differences))
    return "\n".join(lines)


def to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [{**asdict(r), "agrees": r.agrees} for r in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.runtimes differential")
    parser.add_argument("--runtime", action="append", choices=sorted(RUNTIMES))
    parser.add_argument("--layout", action="append", help="only these layouts")
    parser.add_argument("--model", default="", help="a git ref: judge with the model at that ref")
    parser.add_argument("--restart-each", action="store_true")
    parser.add_argument("--parallel", type=int, default=3, help="runtime processes at a time")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    layouts = [x for x in load_corpus() if not args.layout or x.name in args.layout]
    predictor = model_from_git(args.model) if args.model else current_model
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cniwarden-differential-") as base:
        results = run_all(
            args.runtime or sorted(RUNTIMES),
            layouts,
            predictor,
            Path(base),
            parallel=args.parallel,
            restart_each=args.restart_each,
            progress=lambda r: print(
                f"  {r.runtime} {r.layout}: {'agree' if r.agrees else 'DIFFER'} ({r.seconds:.1f}s)",
                file=sys.stderr,
            ),
        )
    print(f"all runtimes: {time.monotonic() - started:.1f}s wall", file=sys.stderr)
    rows = [row for name in results for row in results[name]]
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(to_json(rows), indent=1))
    return 0 if all(r.agrees for r in rows) else 1
