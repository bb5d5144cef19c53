import azure.functions as func  # noqa: F401  (no FunctionApp instance at module level)


def make_app():
    return func.FunctionApp()
