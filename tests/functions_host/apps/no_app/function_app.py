import azure.functions as func


def make_app():
    return func.FunctionApp()
