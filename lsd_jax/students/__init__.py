"""Few-step students that replace the teacher's network (not just its sampler).

- `lsd_jax.students.di4c`: Di4C mixture students (Hayakawa et al., ICML 2025): the model,
  its losses and its score function; `lsd_jax.students.fit`: their training (optax, orbax
  resume) behind `lsd-jax distill-student`.

Imports no jax (the CLI reads its choices and STUDENT_FILE from here).
"""

METHODS = ("di4c",)
STUDENT_FILE = "di4c.json"  # marks a student directory: `lsd-jax sample --checkpoint DIR` loads it as one
DATA_SCHEDULES = ("sigmoid", "constant")  # the data correlation term's weight over t (sdtt: sigmoid)
STUDENT_GRIDS = ("uniform", "power", "cosine")  # the student's M-step grid (grids.get_grid; power: p = 2)
ESTIMATORS = ("cv", "plain")  # the KL estimator of the consistency / data terms (sony/di4c: cv)
