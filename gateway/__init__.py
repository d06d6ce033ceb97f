"""Gateway: the Recommend service that orchestrates recall then rank."""
