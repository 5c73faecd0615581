"""The HTTP side of reco: FastAPI app (`serving.app.create_app`), request/response schemas, settings and
the model manager. Ranking, candidates, rules, exploration and explanations live in `reco/`."""
