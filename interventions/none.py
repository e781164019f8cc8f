"""The baseline: no intervention."""
from harness.registry import INTERVENTIONS
from interventions.base import Intervention

INTERVENTIONS.register("none")(Intervention)
