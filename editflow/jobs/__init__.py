"""Jobs: the one layer that composes editflow's parts into the work a command or a flow asks for.

``erase`` (request -> closed form -> fine-tuning -> patch) and ``evaluate`` (prompts -> images ->
detection -> metrics -> gates -> report). The parts (``edits``, ``finetune``, ``inversion``,
``evaluation``, ``models``, ``world``) import downward only; the CLI and the flows call jobs.
"""
