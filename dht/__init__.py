"""Discovery: where. The Kademlia DHT arrives in a later issue."""
