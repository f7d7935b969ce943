"""Where the NFS servers and object-store endpoints are: discovery shared by plugins."""
