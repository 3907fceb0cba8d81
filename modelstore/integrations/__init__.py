"""Training-framework callbacks that commit a version at each save/epoch (optional extras).

Import the one you need (`from modelstore.integrations.lightning import ModelstoreCallback`);
this package imports none of the frameworks. Each module imports fine without its
framework; creating its callback then raises MissingExtraError naming the extra to install.
"""
