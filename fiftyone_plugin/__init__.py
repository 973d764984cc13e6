"""samfleet's FiftyOne plugin ("@samfleet/sam3"): SAM3 over datasets through the samfleet
service, review and export.  FiftyOne loads this file as the plugin; it needs the `samfleet`
package installed in the same environment (`pip install 'samfleet[fiftyone]'`)."""

from fiftyone_plugin.operators import OPERATORS


def register(plugin):
    for operator in OPERATORS:
        plugin.register(operator)
