"""Benchmark: rows in parallel (issue 16, parts 3 and 4): ``--jobs 2`` against ``--jobs 1``, and a
Dask LocalCluster (2 worker processes) against ``--jobs 2``.

Run by hand from the repository root (a quiet machine: see "Load" below):

    PYTHONPATH=. python benchmarks/parallel.py              # the sizes of the targets, ~5 min
    PYTHONPATH=. python benchmarks/parallel.py --quick      # small sizes, while developing
    PYTHONPATH=. python benchmarks/parallel.py --cases margin --no-dask --no-cli

Three row-parallel commands: margins of an MLP (digits, 64 features, 10 classes), counterfactuals
of a random forest (wine, 13 features, 3 classes; a generous per-row time limit, so that no row
stops at it and every run solves the same problem), explanations of the same MLP (8x8 images).
For each, in one run:

- in process: the plain solver call on all rows (BLAS as it comes), ``invaudit.parallel`` with
  ``jobs=1`` (its chunks one after the other, BLAS on one thread), ``jobs=2`` (this process and
  one forked worker on Linux), the LocalCluster twice (the first run includes the workers'
  imports; a cluster that serves many runs is warm, so the second is the one compared);
- through the command line, as a user runs it (a new process each time: start-up, reading the
  model and the data, the report to stdout): ``--jobs 1``, ``--jobs 2``, ``--scheduler ADDRESS``;
  and on one row (the fixed cost S), also with the light load of networks and trees switched off
  (the start-up these models had when they imported scikit-learn).

It prints wall seconds, CPU seconds (this process / the worker / the cluster's workers; for a
command, the command and every process it started), peak memory, and the ratios of the targets:
``--jobs 1`` / ``--jobs 2`` >= 1.7 and LocalCluster / ``--jobs 2`` <= 1.3. Every parallel answer is
compared with the serial one (in process: every array bit for bit; commands: the JSON results).

Load
----
Linux shares the CPU between sessions first (autogroup scheduling), then between the processes
of a session. On a machine that other sessions keep busy, a second process of the same run gets
no more CPU than the first would have had alone, so a wall ratio measured there says nothing
about the code. Two figures do not depend on the load: CPU seconds, and the *CPU-bound ratio*
``serial CPU / CPU of the busiest process`` (what the wall ratio is on idle cores, with the
imbalance between the processes counted, start-up waits not), where each chunk's CPU is taken by
the thread that solved it, in the process that solved it (``invaudit.parallel.last_run["cpu"]``;
a Dask worker's event loop and this process's bookkeeping are not in it, so the figures of a
process as a whole are printed next to it). The load average is printed around every case;
wall ratios are marked when it was above half the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SM = ROOT / "sample_models"
INVAUDIT = [sys.executable, "-m", "invaudit.cli.app"]
# the same command with the light load of networks and trees switched off (the real estimator
# unpickled and adapted, scikit-learn imported): the start-up these models had before it
INVAUDIT_FULL_LOAD = [sys.executable, "-c",
                      "import sys\n"
                      "from invaudit.models import _light_nonlinear\n"
                      "_light_nonlinear.light_form = lambda loaded: None\n"
                      "from invaudit.cli.app import main\n"
                      "main(sys.argv[1:])\n"]

# rows per case: about 20 s of serial CPU each on this 2-core machine, so that a command's
# start-up, which no number of processes shortens, is small beside the work: with start-up S and
# serial work W, a command's ratio is at most (S + W) / (S + W / 2), printed as "ceiling" (S
# measured as the command on one row). S was ~3-4.5 s while these models imported scikit-learn;
# the light load (invaudit.models._light_nonlinear) reads the MLP and the forest without it:
# ~1 s CPU for the MLP's commands, ~2 s for the forest's (scipy.optimize, for HiGHS, is ~1 s).
# MLP margins: 8,192 rows since their guided chunk plan (invaudit.parallel.plan) made them ~25%
# cheaper (6,144 rows, the earlier size, is now ~16 s serial: --margin-rows 6144).
FULL = {"margin": 8192, "counterfactual": 160, "explain": 4096}
QUICK = {"margin": 512, "counterfactual": 24, "explain": 384}


def _same(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and (
            np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn):
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Cluster:
    """A Dask LocalCluster with 2 single-threaded worker processes, run by a helper process (a
    LocalCluster's scheduler is an event loop in the process that starts it: here it would add its
    CPU to this process's figures), and the CPU seconds of its workers."""

    CODE = ("import sys\n"
            "from dask.distributed import LocalCluster\n"
            "c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, "
            "silence_logs=50)\n"
            "print(c.scheduler_address, flush=True)\n"
            "sys.stdin.read()\n"
            "c.close()\n")

    def __init__(self):
        import psutil
        from dask.distributed import Client

        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     cwd=tempfile.gettempdir())
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("the LocalCluster did not start")
        with Client(self.address) as c:
            pids = c.run(os.getpid)
        self.procs = [psutil.Process(p) for p in pids.values()]
        # an idle Dask worker spends CPU on its event loop (heartbeats): measured here, taken off
        # the workers' figures below (a few percent of a core each; more on a loaded machine)
        c0, t0 = self.cpu(), time.perf_counter()
        time.sleep(3.0)
        self.idle = max(0.0, (sum(self.cpu()) - sum(c0)) / len(c0) / (time.perf_counter() - t0))

    def work(self, before: list, after: list, wall: float) -> list:
        """CPU seconds of each worker between two readings, less its idle rate over ``wall``."""
        return [max(0.0, b - a - self.idle * wall) for a, b in zip(before, after)]

    def cpu(self) -> list:
        return [sum(p.cpu_times()[:2]) for p in self.procs]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cases(sizes: dict, wanted) -> list:
    """``(name, short, plain(), par(**kw), cli_args, data array)`` per case."""
    import joblib

    from invaudit import parallel
    from invaudit.counterfactual import counterfactuals_with_extras
    from invaudit.explain import explain_rows
    from invaudit.margins import margins
    from invaudit.models import adapt

    digits = np.concatenate([np.load(SM / f"digits_{s}.npz")["X"] for s in ("test", "train")]).astype(np.float64)
    wine = np.concatenate([np.load(SM / f"wine_{s}.npz")["X"] for s in ("test", "train")]).astype(np.float64)

    def rows(X, n):  # the data set, repeated as often as needed (each copy a new row to solve)
        return np.asarray(np.resize(X, (n, X.shape[1])), dtype=np.float64)

    mlp = adapt(joblib.load(SM / "digits_mlp.joblib"))
    forest = adapt(joblib.load(SM / "wine_forest.joblib"))
    out = []
    if "margin" in wanted:
        Xm = rows(digits, sizes["margin"])
        out.append((f"margin, MLP (digits, 64 features, 10 classes), {len(Xm)} rows", "margin",
                    lambda: margins(mlp, Xm), lambda **p: parallel.margins(mlp, Xm, **p),
                    ["margin", str(SM / "digits_mlp.joblib")], Xm))
    if "counterfactual" in wanted:
        Xc = rows(wine, sizes["counterfactual"])
        kw_c = dict(target="other", time_limit=600.0)
        out.append((f"counterfactual, random forest (wine, 13 features), {len(Xc)} rows", "counterfactual",
                    lambda: counterfactuals_with_extras(forest, Xc, **kw_c),
                    lambda **p: parallel.counterfactuals_with_extras(forest, Xc, **kw_c, **p),
                    ["counterfactual", str(SM / "wine_forest.joblib"), "--time-limit", "600"], Xc))
    if "explain" in wanted:
        Xe = rows(digits, sizes["explain"])
        kw_e = dict(rows=np.arange(len(Xe)), baseline=np.zeros(64), shape=(8, 8), confidence=0.5)
        out.append((f"explain, MLP (digits 8x8), {len(Xe)} rows", "explain",
                    lambda: explain_rows(mlp, Xe, **kw_e), lambda **p: parallel.explain_rows(mlp, Xe, **kw_e, **p),
                    ["explain", str(SM / "digits_mlp.joblib"), "--shape", "8x8", "--confidence", "0.5"], Xe))
    return out


def _hwm_mb(pid: int) -> float:
    """VmHWM (peak resident memory of the process's own address space) in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_cli(args: list, out: Path, env: dict, prog=INVAUDIT):
    """One command in a new process: (wall s, CPU s of it and every process it started, peak RSS
    MB of the largest, its JSON results). Peak memory is polled (VmHWM of the command and of its
    workers): ru_maxrss of a child would carry over this benchmark's own peak through exec."""
    import threading

    try:
        import psutil  # installed with dask
    except ImportError:  # pragma: no cover
        psutil = None
    with open(out, "wb") as fh, open(out.with_suffix(".err"), "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(prog + args + ["--format", "json"], stdout=fh, stderr=err, env=env, cwd=ROOT)
        peak = [0.0]
        done = threading.Event()

        def poll():
            if psutil is None:
                peak[0] = float("nan")
                return
            proc = psutil.Process(p.pid)
            while not done.is_set():
                try:
                    pids = [p.pid] + [c.pid for c in proc.children(recursive=True)]
                except psutil.Error:
                    break
                peak[0] = max([peak[0]] + [_hwm_mb(k) for k in pids])
                done.wait(0.1)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)  # the child's rusage includes the workers it reaped
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {p.returncode}: {out.with_suffix('.err').read_text()[-2000:]}")
    rep = json.loads(out.read_text())
    return wall, ru.ru_utime + ru.ru_stime, peak[0], rep["results"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    ap.add_argument("--cases", default="margin,counterfactual,explain", help="comma-separated subset")
    ap.add_argument("--margin-rows", type=int)
    ap.add_argument("--cf-rows", type=int)
    ap.add_argument("--explain-rows", type=int)
    ap.add_argument("--no-dask", action="store_true", help="no LocalCluster figures")
    ap.add_argument("--no-cli", action="store_true", help="in-process figures only")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain solver call")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from invaudit import parallel

    sizes = dict(QUICK if args.quick else FULL)
    for key, val in (("margin", args.margin_rows), ("counterfactual", args.cf_rows), ("explain", args.explain_rows)):
        if val is not None:
            sizes[key] = val
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    cores = parallel.cores()
    print(f"cores: {cores}; load average at start: {_load():.1f}; python {sys.version.split()[0]}")
    cluster = None
    if not args.no_dask:
        try:
            cluster = Cluster()
        except ImportError:
            print("dask is not installed: no cluster figures (pip install '.[dask]')")
        else:
            print(f"LocalCluster at {cluster.address}: 2 worker processes, 1 thread each; idle, a worker uses "
                  f"{cluster.idle:.3f} s CPU per second (taken off the figures below)")
    env = dict(os.environ, INVAUDIT_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    table = []
    tmp = Path(tempfile.mkdtemp(prefix="invaudit-bench-"))
    try:
        for name, short, whole, par, cli_args, X in cases(sizes, wanted):
            load0 = _load()
            print(f"\n{name} (load average {load0:.1f})")
            if not args.no_plain:
                _, t, c = _timed(whole)
                print(f"  plain solver call         {t:7.2f} s wall {c:7.2f} s CPU (BLAS threads as they come)")
            ref, t1, c1 = _timed(lambda: par(jobs=1))
            s1 = sum(parallel.last_run["cpu"].values())  # the chunks' own CPU (module docstring)
            print(f"  jobs=1 (chunks in turn)   {t1:7.2f} s wall {c1:7.2f} s CPU ({s1:.2f} s in the chunks)")
            k0 = _children()
            out2, t2, c2 = _timed(lambda: par(jobs=2))
            cw = _children() - k0  # the forked worker, reaped when the pool shut down
            who = dict(parallel.last_run)
            here = who["cpu"].get(os.getpid(), 0.0)
            there = sorted((v for k, v in who["cpu"].items() if k != os.getpid()), reverse=True)
            ok2 = _same(ref, out2)
            busiest = max([here] + there + [1e-9])
            print(f"  jobs=2                    {t2:7.2f} s wall {c2:7.2f} s CPU here + {cw:.2f} s in the worker; "
                  f"in the chunks {here:.2f} s here + {' + '.join(f'{v:.2f}' for v in there) or '0'} s in the worker; "
                  f"chunks here/worker {who['here']}/{who['pool']}; same answers: {ok2}")
            row = {"case": short, "rows": len(X), "t1": t1, "c1": c1, "t2": t2, "cpu_ratio": s1 / busiest,
                   "wall_ratio": t1 / t2, "same": ok2}
            if cluster is not None:
                w0 = cluster.cpu()
                out3, t3, _ = _timed(lambda: par(scheduler=cluster.address))
                w1 = cluster.cpu()
                out4, t4, c4 = _timed(lambda: par(scheduler=cluster.address))
                w2 = cluster.cpu()
                wc = cluster.work(w1, w2, t4)
                chunks = sorted(parallel.last_run["cpu"].values(), reverse=True) or [0.0]
                ok3 = _same(ref, out3) and _same(ref, out4)
                print(f"  LocalCluster, 2 workers   {t4:7.2f} s wall {c4:7.2f} s CPU here + "
                      f"{' + '.join(f'{v:.2f}' for v in wc)} s in the workers, of which "
                      f"{' + '.join(f'{v:.2f}' for v in chunks)} s in the chunks (first run, cold: {t3:.2f} s wall, "
                      f"{sum(cluster.work(w0, w1, t3)):.2f} s CPU in the workers); same answers: {ok3}")
                row.update(t3=t3, t4=t4, dask_ratio=t4 / t2, dask_cpu_ratio=max(chunks) / busiest,
                           same=row["same"] and ok3)
            print(f"  peak memory: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
                  f"largest child so far (forked workers; commands are measured below) "
                  f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
            if not args.no_cli:
                data = tmp / f"{short}.npy"
                np.save(data, X)
                cli = {}
                # the command's fixed cost S (start-up, model, data, report) on one row
                one_row = cli_args[:1] + [cli_args[1], str(data)] + cli_args[2:] + ["--rows", "0", "--jobs", "1"]
                s_wall, s_cpu, s_rss = run_cli(one_row, tmp / f"{short}-S.json", env)[:3]
                f_wall, f_cpu, f_rss = run_cli(one_row, tmp / f"{short}-S-full.json", env, INVAUDIT_FULL_LOAD)[:3]
                print(f"  command on one row (S)    {s_wall:7.2f} s wall {s_cpu:7.2f} s CPU, peak {s_rss:.0f} MB "
                      f"(full load, scikit-learn imported: {f_wall:.2f} s wall {f_cpu:.2f} s CPU, peak {f_rss:.0f} MB)")
                for label, extra in (("1", ["--jobs", "1"]), ("2", ["--jobs", "2"]),
                                     ("dask", None if cluster is None else ["--scheduler", cluster.address])):
                    if extra is None:
                        continue
                    w0 = cluster.cpu() if cluster is not None else None
                    cli[label] = run_cli(cli_args[:1] + [cli_args[1], str(data)] + cli_args[2:] + extra,
                                         tmp / f"{short}-{label}.json", env)
                    wall, cpu, rss, _ = cli[label]
                    more = ""
                    if label == "dask":
                        more = f" + {sum(cluster.work(w0, cluster.cpu(), wall)):.2f} s in the workers"
                    flag = "scheduler" if label == "dask" else "jobs " + label
                    print(f"  command --{flag:<9}      {wall:7.2f} s wall "
                          f"{cpu:7.2f} s CPU{more}, peak {rss:.0f} MB")
                same_cli = all(cli[k][3] == cli["1"][3] for k in cli)
                work = max(cli["1"][0] - s_wall, 1e-9)  # the serial command's work beyond S
                # on idle cores: S's CPU, then the chunks as they ran in process (serial / busiest)
                row.update(cli_t1=cli["1"][0], cli_t2=cli["2"][0], cli_ratio=cli["1"][0] / cli["2"][0],
                           same=row["same"] and same_cli, ceiling=(s_wall + work) / (s_wall + work / 2),
                           cli_cpu_ratio=(s_cpu + s1) / (s_cpu + busiest))
                if "dask" in cli:
                    row.update(cli_dask_ratio=cli["dask"][0] / cli["2"][0])
                print(f"  commands give the same results: {same_cli}")
            row["load"] = max(load0, _load())
            table.append(row)
    finally:
        if cluster is not None:
            cluster.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    print(f"\nSummary ({cores} cores; load average at the end {_load():.1f}; '*': the load average exceeded "
          f"{cores / 2:g} during the case, so its wall ratios say little, see the docstring)")
    print(f"{'case':<15}{'rows':>6}{'jobs1 s':>9}{'CPU s':>8}  {'jobs1/jobs2':>22}  {'command jobs1/jobs2':>32}"
          f"  {'cluster/jobs2':>22}  {'same':>5}")
    for r in table:
        star = "*" if r["load"] > cores / 2 else " "
        inproc = f"{r['wall_ratio']:.2f}{star} wall {r['cpu_ratio']:.2f} CPU"
        cli = (f"{r['cli_ratio']:.2f}{star} {r['cli_cpu_ratio']:.2f} CPU (ceil. {r['ceiling']:.2f})"
               if "cli_ratio" in r else "-")
        if "dask_ratio" in r:
            dask = f"{r['dask_ratio']:.2f}{star} wall {r['dask_cpu_ratio']:.2f} CPU"
            if "cli_dask_ratio" in r:
                dask += f" ({r['cli_dask_ratio']:.2f} cmd)"
        else:
            dask = "-"
        print(f"{r['case']:<15}{r['rows']:>6}{r['t1']:>9.2f}{r['c1']:>8.2f}  {inproc:>22}  {cli:>32}  {dask:>22}  "
              f"{str(r['same']):>5}")
    print("targets: jobs1/jobs2 >= 1.7 (in process and command); cluster/jobs2 <= 1.3. CPU ratios, from the chunks' "
          "CPU: serial over the busiest process (jobs); the busiest cluster worker over the busiest process of "
          "jobs=2 (cluster); a command's: (S CPU + serial chunks' CPU) / (S CPU + busiest process's chunks' CPU), S "
          "the command on one row. A command's ceiling: (S + W) / (S + W / 2), S its wall time on one row, W the "
          "rest of its serial wall time (what two perfectly balanced processes would give).")
    if not all(r["same"] for r in table):
        raise SystemExit("a parallel run gave other answers than the serial one")


if __name__ == "__main__":
    main()
