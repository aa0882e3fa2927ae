"""`python -m benchmarks plan --suite NAME`: the runs a suite asks for, without training any.

Per task its horizon and budgets, and per arm what it trains (a budget arm's strategy and
epochs), its evaluation seeds and its initial tuning grid (a control: its rule's tuned LR); then
the counts of the initial tuning runs, the reference runs and the evaluation runs. With `--runs`,
every one of those runs' folders (the evaluation runs' LRs are the tuned ones, not known yet:
`lr<tuned>`). Tuning extensions beyond an edge pick (up to `max_extensions` an arm) come on top.
"""

from benchmarks import suite as suite_lib


def lines(suite: suite_lib.Suite, runs: bool = False) -> list[str]:
  out = [f"suite {suite.name}: {len(suite.tasks)} tasks, seeds {list(suite.seeds)}, "
         f"up to {suite.max_extensions} tuning extensions an arm"]
  evaluation = []
  for task in suite.tasks:
    horizon = suite.arm_epochs(task, suite.baseline)
    budgets = suite.task_budgets(task)
    out.append(f"{task}: horizon {horizon} epochs"
               + (f", budgets {list(budgets)} epochs" if budgets else ""))
    for arm in suite.task_strategies(task):
      seeds = suite.seeds_of(task, arm)
      run = suite.run(task, arm, seeds[0]) if seeds else None
      trains = run.train_strategy if run and run.train_strategy else arm
      control = suite_lib.control_of(arm)
      lrs = (f"{control[1]}'s tuned LR" if control else
             "grid " + ", ".join(f"{lr:g}" for lr in suite.strategy_grid(task, arm))
             if task in suite.tune_tasks else f"lr {suite.strategy_lr(task, arm):g}")
      out.append(f"  {arm:<22} {trains} for {suite.arm_epochs(task, arm)} epochs, "
                 f"{len(seeds)} seeds, {lrs}")
      evaluation += [f"runs/{task}/{arm}/lr<tuned>/seed{s}" for s in seeds]
  tuning, reference = suite.tune_grid(), suite.reference_grid()
  out.append(f"initial tuning runs: {len(tuning)}; reference runs: {len(reference)}; "
             f"evaluation runs: {len(evaluation)}")
  if runs:
    out += [str(r.relpath()) for r in tuning] + [str(r.relpath()) for r in reference]
    out += evaluation
  return out
