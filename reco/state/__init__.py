"""The online state: Redis (`store.RedisStore` owns every key), the stream -> lake sink, the embedded Redis server."""
