"""edgegw-weather: an edgegw driver for HTTP/JSON weather stations.

Registered with the gateway through the ``edgegw.drivers`` entry point (``driver: weather``).
"""

from edgegw_weather.driver import WeatherOptions, WeatherStationDriver

__version__ = "0.1.0"
__all__ = ["WeatherOptions", "WeatherStationDriver", "__version__"]
