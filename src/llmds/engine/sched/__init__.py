"""Scheduling: the one step planner shared by ``LLMEngine`` and cb_lab (no tensors here).

    planner.py        Planner: decode first, then running prefills, then admissions; preemption
    step_plan.py      StepPlan (what one step runs) and PlannerConfig (its budgets)
    request_queue.py  the waiting queue and the urgency orders (fcfs, priority, edf)
    decode_batch.py   the running decodes as flat lists (the O(batch) decode step)
"""
