"""Requests resumed from another replica (a live migration) recompute their context in as few
steps as the resume allowance lets them: on top of ``max_num_batched_tokens``, up to
``max_num_resume_tokens`` per step, and only for them (new prompts still get chunked)."""

from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.scheduler import Scheduler

from tests.engine.fake_runner import FakeRunner

VOCAB = 50
PARAMS = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, seed=1)


def _sched(**kw: int) -> Scheduler:
    return Scheduler(num_kv_blocks=1024, block_size=16, max_model_len=4096, vocab_size=VOCAB,
                     max_num_batched_tokens=512, **kw)


def _add(sched: Scheduler, n: int, *, resumed: bool) -> None:
    for i in range(n):
        prompt = [(i + k) % VOCAB for k in range(26)]
        outputs = [(3 * i + k) % VOCAB for k in range(32)] if resumed else None
        sched.add(f"r{i}", prompt, PARAMS, output_ids=outputs)


def test_fifty_resumed_requests_recompute_in_one_step() -> None:
    sched = _sched()
    _add(sched, 50, resumed=True)  # 50 x 58 = 2900 tokens <= 512 + 4096
    plan = sched.schedule(0.0)
    assert len(plan.seqs) == 50 and plan.num_tokens == 2900
    assert all(s.do_sample for s in plan.seqs)  # every stream gets its next token from this step


def test_allowance_is_bounded_and_can_be_turned_off() -> None:
    sched = _sched(max_num_resume_tokens=1000)
    _add(sched, 50, resumed=True)
    assert sched.schedule(0.0).num_tokens == 512 + 1000
    off = _sched(max_num_resume_tokens=0)
    _add(off, 50, resumed=True)
    assert off.schedule(0.0).num_tokens == 512


def test_new_prompts_get_no_allowance() -> None:
    sched = _sched()
    _add(sched, 50, resumed=False)
    assert sched.schedule(0.0).num_tokens == 512


def test_resumed_answers_go_on_after_the_big_step() -> None:
    sched = _sched()
    _add(sched, 50, resumed=True)
    runner = FakeRunner(1024, 16, VOCAB)
    for i in range(3):
        plan = sched.schedule(float(i))
        updates = sched.postprocess(plan, runner.run(plan), float(i))
        assert len(updates) == 50  # one token per stream per step, from the first step on
    assert sched.schedule(3.0).num_tokens == 50  # decodes only, within the budget
