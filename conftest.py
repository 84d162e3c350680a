pytest_plugins = ["virtualcard.pytest_plugin"]
