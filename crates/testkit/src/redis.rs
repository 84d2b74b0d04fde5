//! Real `redis-server` processes: standalone, and a 3-master Redis Cluster.
