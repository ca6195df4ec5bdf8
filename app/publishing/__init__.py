"""What is served, changed at run time: the publisher, the registry file, archives, document writes."""
