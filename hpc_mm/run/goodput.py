"""What goodput a job will have at a given scale: a seeded, event-driven simulator (and the
first-order closed form beside it) fed with a run's measured cost breakdown.

Costs (seconds, measured from a run's record, or declared): a checkpoint save, the stop after a
signal, a restart inside the allocation, a start-up after a requeue (to the first iteration), and
the step time. Faults arrive at random (Poisson): failures at a rate per accelerator (a fraction of
them lose a node for good: a dead node, a GPU/NPU that must be drained), and preemptions at a rate
per day. Three strategies:

    requeue   every fault goes back through the queue: stop, wait in the queue, start up
    inside    a fault restarts the step inside the allocation; a lost node still needs the queue
              (the allocation is one node short)
    spares    as inside, and a lost node is replaced by one of S spare nodes held with the job
              (they count as held time); when they run out, the queue, and S fresh spares

A preemption always goes through the queue. Work since the last checkpoint is lost at a failure,
and at a preemption unless the entry saves on the stop signal. A failure may repeat right after a
restart (`repeat`): the next start fails at once, as a bad node that was not left out does.
Goodput is training time kept over node time held (spares included).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass, field, replace

from hpc_mm.names import Fault, Strategy
from hpc_mm.run.events import AGAIN, Kind
from hpc_mm.run.interval import young_daly
from hpc_mm.run.rundir import RunDir

STRATEGIES = tuple(Strategy)
# Meta, Llama 3 (2024): 1.8 h between interruptions on 16,384 GPUs; 78% of unexpected ones hardware.
META_RATE_PER_ACCELERATOR_HOUR = 1.0 / (1.8 * 16384)
META_NODE_LOSS_FRACTION = 0.78


STALLED = 1e-4  # goodput below this is none
MIN_FAULTS = 1000  # interruptions simulated before a job that keeps nothing is called stalled
SHORTEST_STEP = 1e-3  # seconds: a measured step shorter than this is a broken record


@dataclass(frozen=True)
class Costs:
    save: float = 60.0  # what a save holds training (a background save: its stall)
    stop: float = 10.0
    restart_inside: float = 60.0
    startup: float = 120.0  # batch start to the first iteration, after a requeue
    step: float = 1.0
    sources: dict = field(default_factory=dict)  # what was measured, what assumed
    write: float | None = None  # a background save's whole time (None: the save holds training all along)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scale:
    accelerators: int
    per_node: int = 8
    failure_rate: float = META_RATE_PER_ACCELERATOR_HOUR  # failures per accelerator-hour
    node_loss: float = META_NODE_LOSS_FRACTION  # of the failures, those that lose a node
    preemptions_per_day: float = 0.0
    queue_wait: float = 3600.0  # mean seconds in the queue after a requeue
    spares: int = 1
    repeat: float = 0.05  # a restart that fails again at once (the cause was not left out)
    saves_on_signal: bool = True

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.accelerators / self.per_node))

    @property
    def mtbf(self) -> float:
        """Seconds between interruptions (failures and preemptions) of the whole job."""
        rate = self.accelerators * self.failure_rate / 3600.0 + self.preemptions_per_day / 86400.0
        return 1.0 / rate if rate > 0 else math.inf


def interval_for(costs: Costs, scale: Scale) -> float:
    """The checkpoint interval (seconds of training) for this scale: Young/Daly on what a save holds
    training, and no shorter than a whole save (a background save starts once the last is written)."""
    if not math.isfinite(scale.mtbf):
        return 86400.0
    return max(costs.step, costs.write or 0.0, young_daly(costs.save, scale.mtbf))


def closed_form(costs: Costs, scale: Scale, strategy: str, interval: float | None = None) -> float:
    """First order, wall-clock: 1 - save/tau - (tau/2 + recovery) / MTBF (queue waits included)."""
    strategy = Strategy(strategy)  # an unknown one is an error, never another strategy
    tau = interval or interval_for(costs, scale)
    if not math.isfinite(scale.mtbf):
        return 1.0 / (1.0 + costs.save / tau)
    fail = scale.accelerators * scale.failure_rate / 3600.0
    preempt = scale.preemptions_per_day / 86400.0
    queue = costs.stop + scale.queue_wait + costs.startup
    lost = {Strategy.REQUEUE: queue, Strategy.INSIDE: costs.restart_inside, Strategy.SPARES: costs.restart_inside}
    node_loss = scale.node_loss if strategy is Strategy.INSIDE else 0.0
    per_failure = tau / 2 + (
        node_loss * queue + (1 - node_loss) * lost[strategy] if strategy is not Strategy.REQUEUE else queue
    )
    per_preemption = queue + (0.0 if scale.saves_on_signal else tau / 2)
    rate = fail * per_failure + preempt * per_preemption  # wasted seconds per second of the job
    return max(0.0, (1.0 / (1.0 + costs.save / tau)) / (1.0 + rate))


@dataclass(frozen=True)
class Outcome:
    strategy: str
    goodput: float  # training time kept over wall-clock time (queue waits included): the user's view
    held_goodput: float  # training node-time kept over node-time held (spares included): the cluster's view
    useful: float
    held: float
    interruptions: int
    requeues: int
    restarts_inside: int
    lost_work: float


def simulate(
    costs: Costs,
    scale: Scale,
    strategy: str,
    work: float = 30 * 86400.0,
    interval: float | None = None,
    seed: int = 0,
    schedule: list[tuple[float, str]] | None = None,
) -> Outcome:
    """Train `work` seconds of iterations; faults at random (or at the wall-clock times of
    `schedule`: (time, "crash" | "node" | "preemption")). Time is wall-clock seconds."""
    strategy = Strategy(strategy)  # an unknown one is an error, never another strategy
    rng = random.Random(seed)
    tau = interval or interval_for(costs, scale)
    fail_rate = scale.accelerators * scale.failure_rate / 3600.0
    preempt_rate = scale.preemptions_per_day / 86400.0
    planned = sorted((at, Fault(kind)) for at, kind in schedule or [])
    clock = useful = held = lost_work = 0.0
    done = 0.0  # training kept (checkpointed)
    requeues = inside = interruptions = 0
    spares = scale.spares if strategy is Strategy.SPARES else 0
    held_nodes = scale.nodes + spares
    pending_repeat = False

    def next_fault(now: float) -> tuple[float, str]:
        if schedule is not None:
            while planned and planned[0][0] < now:
                planned.pop(0)
            return planned.pop(0) if planned else (math.inf, "")
        if pending_repeat:
            return now + costs.step, Fault.REPEAT
        waits = []
        if fail_rate > 0:
            kind = Fault.NODE if rng.random() < scale.node_loss else Fault.CRASH
            waits.append((now + rng.expovariate(fail_rate), kind))
        if preempt_rate > 0:
            waits.append((now + rng.expovariate(preempt_rate), Fault.PREEMPTION))
        return min(waits) if waits else (math.inf, "")

    clock += costs.startup  # the first start
    held += costs.startup * held_nodes
    # Faults that come faster than a save and a step leave nothing kept: such a job never finishes,
    # and the simulation stops once it has trained less than STALLED of its wall-clock time.
    while done < work and not (interruptions > MIN_FAULTS and useful < STALLED * clock):
        fault_at, kind = next_fault(clock)
        # train from `clock` (work = done) in stretches of tau, each followed by a save
        progress, t = done, clock
        while progress < work:
            stretch = min(tau, work - progress)
            end = t + stretch + costs.save
            if end > fault_at:
                break
            t, progress = end, progress + stretch
        if progress >= work:
            held += (t - clock) * held_nodes
            useful += progress - done
            clock, done = t, progress
            break
        # the fault strikes inside a stretch: what was trained since the last save is lost,
        # unless a preemption lets the entry save
        trained = max(0.0, min(fault_at - t, tau))
        interruptions += 1
        pending_repeat = False
        if kind is Fault.PREEMPTION and scale.saves_on_signal:
            progress += min(trained, work - progress)
            trained_lost = 0.0
        else:
            trained_lost = trained
        lost_work += trained_lost
        useful += progress - done
        held += (fault_at - clock) * held_nodes
        done, clock = progress, fault_at
        # a failure that repeats after a restart inside points at a node nobody blamed: the queue
        needs_queue = (
            kind in (Fault.PREEMPTION, Fault.REPEAT)
            or strategy is Strategy.REQUEUE
            or (kind is Fault.NODE and spares == 0)
        )
        if needs_queue:
            requeues += 1
            wait = rng.expovariate(1.0 / scale.queue_wait) if scale.queue_wait > 0 else 0.0
            held += costs.stop * held_nodes
            clock += costs.stop + wait
            spares = scale.spares if strategy is Strategy.SPARES else 0
            held_nodes = scale.nodes + spares  # a new allocation
            held += costs.startup * held_nodes
            clock += costs.startup
        else:
            inside += 1
            if kind is Fault.NODE:
                spares -= 1
                held_nodes -= 1  # the dead node leaves the allocation
            held += costs.restart_inside * held_nodes
            clock += costs.restart_inside
            pending_repeat = schedule is None and kind is Fault.CRASH and rng.random() < scale.repeat
    return Outcome(
        strategy,
        useful / clock if clock > 0 else 0.0,
        useful * scale.nodes / held if held > 0 else 0.0,
        useful,
        held,
        interruptions,
        requeues,
        inside,
        lost_work,
    )


def predict(costs: Costs, scales: list[Scale], seeds: int = 5, work: float = 30 * 86400.0) -> list[dict]:
    """One row a scale: the interval, and each strategy's simulated (mean of `seeds`) and closed-form goodput."""
    rows = []
    for scale in scales:
        tau = interval_for(costs, scale)
        row = {
            "accelerators": scale.accelerators,
            "nodes": scale.nodes,
            "mtbf_hours": scale.mtbf / 3600,
            "interval_seconds": tau,
            "interval_iterations": max(1, round(tau / costs.step)),
        }
        for strategy in STRATEGIES:
            runs = [simulate(costs, scale, strategy, work, tau, seed) for seed in range(seeds)]
            row[strategy] = statistics.mean(r.goodput for r in runs)
            row[f"{strategy}_held"] = statistics.mean(r.held_goodput for r in runs)
            row[f"{strategy}_closed_form"] = closed_form(costs, scale, strategy, tau)
        rows.append(row)
    return rows


def measured(run: RunDir) -> Costs:
    """A run's cost breakdown from its record; what it never did is assumed (and said so)."""
    events, starts = run.events(), run.starts()
    rows = [r for r in run.metrics() if r.time is not None]
    sources: dict[str, str] = {}
    out: dict[str, float] = {}

    def put(name: str, values: list[float], default: float) -> None:
        values = [v for v in values if v is not None and math.isfinite(v) and v >= 0]
        out[name] = statistics.median(values) if values else default
        sources[name] = f"measured ({len(values)})" if values else "assumed"

    put("save", [e.stall_seconds for e in events if e.save_seconds], 60.0)  # what a save holds training
    stops = []
    for s in starts:
        signal_at, ended = (s.end.get("signal_at"), s.end.get("step_ended_at")) if s.end else (None, None)
        if isinstance(signal_at, (int, float)) and isinstance(ended, (int, float)) and ended >= signal_at:
            stops.append(ended - signal_at)
    put("stop", stops, 10.0)
    inside, startup = [], []
    for previous, start in zip(starts, starts[1:]):
        first = next((r.time for r in rows if start.began is not None and r.time >= start.began), None)
        if previous.end is None or start.began is None or first is None:
            continue
        if previous.end.kind is Kind.RESTARTED:
            # from the fault (its last iteration before it: detecting it and ending the step count
            # too) to the first iteration of the next start
            before = [r.time for r in rows if r.time <= previous.end.time]
            inside.append(first - (before[-1] if before else previous.end.time))
        elif previous.end.kind in AGAIN:
            batch = start.started.get("batch_started_at") if start.started else None
            startup.append(first - (batch if isinstance(batch, (int, float)) else start.began))
    if starts and starts[0].began is not None and rows:
        batch = starts[0].started.get("batch_started_at") if starts[0].started else None
        first = next((r.time for r in rows if r.time >= starts[0].began), None)
        if first is not None:
            startup.append(first - (batch if isinstance(batch, (int, float)) else starts[0].began))
    put("startup", startup, 120.0)
    put("restart_inside", inside, out["startup"])
    from hpc_mm.run.timeline import step_seconds

    step = step_seconds(rows)
    usable = step is not None and math.isfinite(step) and step >= SHORTEST_STEP
    out["step"], sources["step"] = (step, "measured") if usable else (1.0, "assumed")
    return Costs(**out, sources=sources)


@dataclass(frozen=True)
class Ratios:
    """The levers of issue-sized costs, as ratios a run measures: what an asynchronous save holds
    training over the whole save (`stall`), and a warm restart inside (standby interpreters, the
    step ended in a second) over a cold start (`warm`). 1.0: the lever is not pulled."""

    stall: float = 1.0
    warm: float = 1.0
    sources: dict = field(default_factory=dict)


def measured_ratios(run: RunDir, costs: Costs | None = None) -> Ratios:
    """A run's own ratios: its background saves' stall over their whole time; its restarts inside
    (fault to the first iteration after it) over its cold start-up (batch start to the first iteration)."""
    stalls = [
        e.stall_seconds / e.save_seconds
        for e in run.events()
        if e.save_seconds and e.get("blocked") is not None and e.stall_seconds is not None
    ]
    costs = costs or measured(run)
    sources = {"stall": f"measured ({len(stalls)})" if stalls else "none (synchronous saves)"}
    warm = 1.0
    if costs.sources.get("restart_inside", "").startswith("measured") and costs.sources.get("startup", "").startswith(
        "measured"
    ):
        warm = min(1.0, costs.restart_inside / costs.startup) if costs.startup > 0 else 1.0
        sources["warm"] = "measured: restart inside over start-up"
    else:
        sources["warm"] = "none (no restart inside yet)"
    return Ratios(statistics.median(stalls) if stalls else 1.0, warm, sources)


def levers(costs: Costs, ratios: Ratios, scales: list[Scale], seeds: int = 5, work: float = 7 * 86400.0) -> list[dict]:
    """What each lever is worth: goodput (spare nodes held, restart inside) with the costs as they
    are, with the save's stall, with the warm restart, and with both, at each scale."""
    variants = {
        "as given": costs,
        "async save": replace(costs, save=costs.save * ratios.stall, write=costs.save),
        "warm restart": replace(costs, restart_inside=costs.restart_inside * ratios.warm),
        "both": replace(
            costs, save=costs.save * ratios.stall, write=costs.save, restart_inside=costs.restart_inside * ratios.warm
        ),
    }
    rows = []
    for scale in scales:
        row = {"accelerators": scale.accelerators}
        for name, c in variants.items():
            tau = interval_for(c, scale)
            row[name] = statistics.mean(
                simulate(c, scale, Strategy.SPARES, work, tau, seed).goodput for seed in range(seeds)
            )
        rows.append(row)
    return rows


def with_costs(costs: Costs, **declared: float | None) -> Costs:
    """`costs` with the numbers the user declared instead of measured ones."""
    given = {k: v for k, v in declared.items() if v is not None}
    sources = {**costs.sources, **{k: "declared" for k in given}}
    return replace(costs, **given, sources=sources)
