"""Which Redis shard of a cluster carries a room, by the chat's one sharding policy
(the channel layer's shard_of): for tests and drills that need rooms on each shard."""

from chat.channel_layer import PubSubChannelLayer
from chat.protocol import room_group_name


def room_shard(cluster, room):
    """The index (0-based) of the cluster's Redis shard that carries `room`."""
    hosts = [f"redis://127.0.0.1:{port}/0" for port in cluster.redis_ports]
    layer = PubSubChannelLayer(hosts=hosts)
    return layer.shard_of(room_group_name(room), cluster.redis_shards)


def rooms_per_shard(cluster, names, per_shard):
    """`per_shard` room names from the iterable `names` for each shard: shard -> names."""
    rooms = {shard: [] for shard in range(cluster.redis_shards)}
    for name in names:
        chosen = rooms[room_shard(cluster, name)]
        if len(chosen) < per_shard:
            chosen.append(name)
        if all(len(chosen) == per_shard for chosen in rooms.values()):
            return rooms
    raise ValueError("ran out of room names")


def rooms_across_shards(cluster, names, count):
    """`count` room names from `names`, as evenly spread over the shards as they go."""
    per_shard = -(-count // cluster.redis_shards)
    chosen = rooms_per_shard(cluster, names, per_shard)
    interleaved = [room for group in zip(*chosen.values(), strict=True) for room in group]
    return interleaved[:count]
