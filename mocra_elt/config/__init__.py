"""Pipeline definitions and project layout."""

from mocra_elt.config.loader import load_pipeline_file, load_pipelines
from mocra_elt.config.model import STAGES, Pipeline
from mocra_elt.config.project import Project

__all__ = ["STAGES", "Pipeline", "Project", "load_pipeline_file", "load_pipelines"]
