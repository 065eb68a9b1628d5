"""The model map: config.yaml's model_list plus the models added through the API (/model/new),
kept in the database and applied on every gateway process."""
