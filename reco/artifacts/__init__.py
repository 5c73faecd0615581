"""Model artifacts: the bundle on disk (model + vocabulary + catalogue, `bundle`), its smoke check
(`smoke`) and the MLflow registry glue (`registry`)."""
