"""coap driver."""
