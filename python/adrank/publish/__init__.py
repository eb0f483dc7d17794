"""`adrank publish`: a new model version checked by the gates (gates.py), then staged into the repository
atomically (adrank.repository.staging) by the pipeline (pipeline.py); steps.py reports its progress, which
the command line (adrank.cli_publish) shows."""
