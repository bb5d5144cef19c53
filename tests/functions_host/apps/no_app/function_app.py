import azure.functions as func  # used by make_app(): no FunctionApp instance at module level


def make_app():
    return func.FunctionApp()
