"""O6 Parameter-based serving: runtime parameters reroute, retune or switch off predictions."""
