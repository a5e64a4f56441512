"""The node's networking: addresses on its devices, floating IPs, gratuitous ARP."""
